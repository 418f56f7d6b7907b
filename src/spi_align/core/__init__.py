"""The contract layer, below everything else: the data every layer passes around (`records.py`), rows of partial
responses (`rows.py`), the extension points (`interfaces.py`) and the one error type (`errors.py`)."""
