"""One command per study: ``python study.py name=<study> [ckpt_path=<.ckpt>] [only=[stage,...]]``
(``make study NAME=<study>``) trains, analyzes and writes ``docs/results/<study>/`` whole."""
import sys

from fsl.publish.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
