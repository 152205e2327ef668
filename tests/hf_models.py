"""Tiny random-config Hugging Face decoders (nothing downloaded) and their statistics computed
independently of the probe: the model's own hidden states, module outputs with retain_grad on a
copy, and what each architecture's source says it adds to the stream (written out per
architecture here, not found by the probe's discovery)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

VOCAB = 256


@dataclass(frozen=True)
class Arch:
    """How to build one architecture and what its layers add, read from its source.

    updates: per layer, the attribute paths (inside the layer) of the modules whose outputs are
    the sublayers' updates, in call order; inside: per sublayer, it adds the stream itself (its
    output is the stream after it: Bloom, MPT's MLP); parallel: every sublayer reads the layer's
    input; scale: config attribute multiplying each update before the add.
    """

    model_type: str
    updates: tuple[str, ...]
    parallel: bool = False
    inside: tuple[bool, ...] = (False, False)
    scale: str | None = None
    config: dict = field(default_factory=dict)


ARCHS: dict[str, Arch] = {
    "gpt2": Arch("gpt2", ("attn", "mlp")),
    "gpt_bigcode": Arch("gpt_bigcode", ("attn", "mlp")),
    "gpt_neo": Arch("gpt_neo", ("attn", "mlp"), config={"attention_types": [[["global"], 2]]}),
    "gptj": Arch("gptj", ("attn", "mlp"), parallel=True),
    "codegen": Arch("codegen", ("attn", "mlp"), parallel=True),
    "gpt_neox": Arch("gpt_neox", ("attention", "mlp"), parallel=True),
    "gpt_neox_sequential": Arch(
        "gpt_neox", ("attention", "mlp"), config={"use_parallel_residual": False}
    ),
    "llama": Arch("llama", ("self_attn", "mlp")),
    "mistral": Arch("mistral", ("self_attn", "mlp")),
    "mixtral": Arch("mixtral", ("self_attn", "mlp")),
    "qwen2": Arch("qwen2", ("self_attn", "mlp")),
    "qwen2_moe": Arch("qwen2_moe", ("self_attn", "mlp")),
    "qwen3": Arch("qwen3", ("self_attn", "mlp")),
    "qwen3_moe": Arch("qwen3_moe", ("self_attn", "mlp")),
    "gemma": Arch("gemma", ("self_attn", "mlp")),
    "gemma2": Arch("gemma2", ("post_attention_layernorm", "post_feedforward_layernorm")),
    "gemma3": Arch("gemma3_text", ("post_attention_layernorm", "post_feedforward_layernorm")),
    "phi": Arch("phi", ("self_attn", "mlp"), parallel=True),
    "phi3": Arch("phi3", ("self_attn", "mlp")),
    "falcon": Arch("falcon", ("self_attention", "mlp"), parallel=True),
    "falcon_new_architecture": Arch(
        "falcon",
        ("self_attention", "mlp"),
        parallel=True,
        config={"new_decoder_architecture": True, "num_kv_heads": 2},
    ),
    "falcon_sequential": Arch("falcon", ("self_attention", "mlp"), config={"parallel_attn": False}),
    "stablelm": Arch("stablelm", ("self_attn", "mlp")),
    "olmo": Arch("olmo", ("self_attn", "mlp")),
    "olmo2": Arch("olmo2", ("post_attention_layernorm", "post_feedforward_layernorm")),
    "starcoder2": Arch("starcoder2", ("self_attn", "mlp")),
    "granite": Arch(
        "granite",
        ("self_attn", "mlp"),
        scale="residual_multiplier",
        config={"residual_multiplier": 0.5},
    ),  # fmt: skip
    "gpt_oss": Arch("gpt_oss", ("self_attn", "mlp")),
    "deepseek_v3": Arch(
        "deepseek_v3",
        ("self_attn", "mlp"),
        config={
            "first_k_dense_replace": 1,
            "kv_lora_rank": 16,
            "q_lora_rank": 16,
            "qk_rope_head_dim": 4,
            "qk_nope_head_dim": 4,
            "v_head_dim": 8,
            "head_dim": 4,
            "n_group": 1,
            "topk_group": 1,
        },
    ),  # fmt: skip
    "bloom": Arch("bloom", ("self_attention", "mlp"), inside=(True, True)),
    "mpt": Arch("mpt", ("attn", "ffn"), inside=(False, True)),
    "opt": Arch("opt", ("self_attn", "fc2")),
    "biogpt": Arch("biogpt", ("self_attn", "fc2")),
    "xglm": Arch("xglm", ("self_attn", "fc2")),
    "cohere": Arch("cohere", ("self_attn", "mlp"), parallel=True),
    "persimmon": Arch("persimmon", ("self_attn", "mlp")),
    "exaone4": Arch("exaone4", ("post_attention_layernorm", "post_feedforward_layernorm")),
    "nemotron": Arch("nemotron", ("self_attn", "mlp")),
    "glm4": Arch("glm4", ("post_self_attn_layernorm", "post_mlp_layernorm")),
    "cohere2": Arch("cohere2", ("self_attn", "mlp"), parallel=True),
    "olmoe": Arch("olmoe", ("self_attn", "mlp")),
    "helium": Arch("helium", ("self_attn", "mlp")),
}

# Refused, with the words their reason contains: encoders, and a post-LN layer that normalises
# the stream itself (no additive residual stream to read).
REFUSED = {
    "t5": ("t5", {}, "encoder-decoder"),
    "bert": ("bert", {}, "no norm among its children"),
    "opt_post_layernorm": (
        "opt",
        {"do_layer_norm_before": False},
        "layer 0 \\(OPTDecoderLayer\\) is not wired as",
    ),
}

SMALL = {
    "num_hidden_layers": 2, "n_layer": 2, "n_layers": 2, "num_layers": 2,
    "hidden_size": 32, "n_embd": 32, "d_model": 32, "intermediate_size": 64, "ffn_dim": 64,
    "n_inner": 64, "d_ff": 64, "moe_intermediate_size": 16, "num_attention_heads": 4,
    "n_head": 4, "n_heads": 4, "num_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB,
    "max_position_embeddings": 64, "n_positions": 64, "max_seq_len": 64, "n_ctx": 64,
    "head_dim": 8, "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "word_embed_proj_dim": 32, "rotary_dim": 4, "d_kv": 8,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0,
}  # fmt: skip


LAYER_COUNTS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")


def tiny_config(model_type: str, n_layers: int = 2, **overrides):
    """A small random config of ``model_type``: the sizes above where the config has them,
    ``n_layers`` layers, every dropout 0 (so a recorded step is reproducible)."""
    from transformers import AutoConfig

    defaults = AutoConfig.for_model(model_type).to_dict()
    kwargs = {k: v for k, v in SMALL.items() if k in defaults}
    kwargs.update({k: n_layers for k in LAYER_COUNTS if k in defaults})
    for key, value in defaults.items():
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key) and value > 0:
            kwargs[key] = 0.0
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def build(name: str, seed: int = 0, n_layers: int = 2) -> torch.nn.Module:
    """The tiny causal LM of ``name`` (an ``ARCHS`` or ``REFUSED`` key), in float32."""
    from transformers import AutoModel, AutoModelForCausalLM

    if name in ARCHS:
        arch = ARCHS[name]
        cfg = tiny_config(arch.model_type, n_layers, **arch.config)
    else:
        model_type, overrides, _ = REFUSED[name]
        cfg = tiny_config(model_type, n_layers, **overrides)
    torch.manual_seed(seed)
    if getattr(cfg, "is_encoder_decoder", False) or name == "bert":
        return AutoModel.from_config(cfg)
    return AutoModelForCausalLM.from_config(cfg)


def batch(seed: int = 0, size: int = 2, length: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (size, length + 1), generator=g)


def lm_loss(model: torch.nn.Module, tokens: torch.Tensor, **kwargs):
    out = model(tokens[:, :-1], **kwargs)
    logits = out.logits
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    return loss, out


def layer_list(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers, by each family's own attribute (not the probe's discovery)."""
    base = getattr(model, model.base_model_prefix, model)
    for attr in ("layers", "h", "blocks"):
        found = getattr(base, attr, None)
        if isinstance(found, torch.nn.ModuleList):
            return found
    return base.decoder.layers


def _rms(t: torch.Tensor) -> float:
    return t.detach().double().pow(2).mean().sqrt().item()


def _norm(t: torch.Tensor) -> float:
    return t.detach().double().norm().item()


def reference(model: torch.nn.Module, name: str, tokens: torch.Tensor) -> dict[str, np.ndarray]:
    """One training step's statistics of ``model`` on ``tokens``, on a copy, in float64: the
    streams are the model's own hidden states (and the sums of the updates its source adds);
    gradients are plain autograd (retain_grad)."""
    arch = ARCHS[name]
    model = copy.deepcopy(model)
    layers = layer_list(model)
    scale = float(getattr(model.config, arch.scale)) if arch.scale else 1.0
    # (value when made, the tensor itself): Falcon adds into its MLP's output in place
    outputs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    last_out: list[torch.Tensor] = []
    handles = []

    def keep(key):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else out
            out.retain_grad()
            outputs[key] = (out.detach().clone(), out)

        return hook

    for li, layer in enumerate(layers):
        for si, path in enumerate(arch.updates):
            handles.append(layer.get_submodule(path).register_forward_hook(keep((li, si))))
    handles.append(
        layers[-1].register_forward_hook(
            lambda m, a, o: last_out.append(o[0] if isinstance(o, tuple) else o)
        )
    )
    loss, out = lm_loss(model, tokens, output_hidden_states=True)
    hidden = list(out.hidden_states)
    n = len(layers)
    layer_in = hidden[:n]
    layer_out = hidden[1:n] + [last_out[0]]
    for t in layer_out:
        t.retain_grad()
    loss.backward()
    for h in handles:
        h.remove()
    values: dict[str, list] = {k: [] for k in ("hidden_rms", "update_rms", "grad_norm")}
    for li in range(n):
        x = layer_in[li]
        stream, updates = x, []
        for si in range(len(arch.updates)):
            f, kept = outputs[(li, si)]
            f = f.view_as(x)  # OPT's fc2 sees the tokens flattened
            if arch.inside[si]:  # f is the stream after the sublayer
                u, g = f - stream, kept.grad
            else:
                u, g = f * scale, kept.grad.view_as(x) / scale
            values["hidden_rms"].append(_rms(x if arch.parallel else stream))
            values["update_rms"].append(_rms(u))
            values["grad_norm"].append(_norm(g))
            updates.append(u)
            stream = stream + u if not arch.parallel else stream
        total = x.double() + sum(u.double() for u in updates)
        mismatch = _norm(total - layer_out[li].double()) / _norm(layer_out[li])
        assert mismatch < 1e-5, f"{name}: the reference's updates do not add up ({mismatch})"
    return {
        "loss": np.array(loss.item()),
        **{k: np.array(v) for k, v in values.items()},
        "param_grad_norm": np.array(
            [
                np.sqrt(
                    sum(
                        p.grad.double().pow(2).sum().item()
                        for p in layer.parameters()
                        if p.grad is not None
                    )
                )
                for layer in layers
            ]
        ),  # fmt: skip
        "layer_output_rms": np.array([_rms(t) for t in layer_out]),
        "layer_grad_norm": np.array([_norm(t.grad) for t in layer_out]),
        "cos_in_out": np.array(
            [
                F.cosine_similarity(a.detach().double(), b.detach().double(), dim=-1).mean().item()
                for a, b in zip(layer_in, layer_out, strict=True)
            ]
        ),
    }


def train(model: torch.nn.Module, p, batches, lr: float = 0.05) -> None:
    """Forward, backward, ``p.step``, SGD step for each batch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for tokens in batches:
        loss, _ = lm_loss(model, tokens)
        loss.backward()
        if p is not None:
            p.step(loss=loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
