from priorscope.cli.main import entrypoint

entrypoint()
