"""`spi bench`: cost of SPI search against best-of-N and a plain sampling loop, measured in one process.

`run.py` orchestrates; `context.py` loads what every bench process needs; `methods.py` builds what is timed;
`timing.py` times it (alternating orders, repeats); `memory.py` measures peak RSS in fresh subprocesses;
`targets.py` checks issue 5's targets; `table.py` renders. Nothing heavy is imported here.
"""
