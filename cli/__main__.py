from attnres_probe.cli.main import app

app(prog_name="attnres-probe")
