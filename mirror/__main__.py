from mirror.cli import run

run()
