from attnres_probe.cli.main import app

app()
