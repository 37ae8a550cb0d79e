import os
import signal

# Before anything else is imported: an interrupt during start-up leaves at once, with one line
# (cli.main keeps this until the arguments are parsed).
signal.signal(signal.SIGINT, lambda signum, frame: (os.write(2, b"llm-edit: interrupted; nothing was written\n"),
                                                    os._exit(130)))

from .cli import entry  # noqa: E402

entry()
