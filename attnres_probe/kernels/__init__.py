"""Fused kernels and their pure-torch references.

``reference``        the pure-torch ops: the documentation of what every kernel computes
``rms_norm``         fused (residual-add +) RMSNorm                 } Triton kernel, launcher and
``attnres``          Full AttnRes aggregation over depth            } autograd Function each;
``block_attnres``    Block AttnRes, phase 1 and phase 2             } statistics as by-products
``dispatch_triton``  the reference's functions, run on those kernels (what ``ops`` calls)
``launch``           tile sizes and checks; each launcher as a custom op to ``torch.compile``

Importing this package imports neither triton nor any kernel module.
"""
