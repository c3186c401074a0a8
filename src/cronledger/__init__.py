"""cronledger: record every execution of every periodic job."""

__version__ = "0.1.0"
