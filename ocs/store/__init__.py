"""Durable LMDB store: environment, records, per-operation write views, group commit."""

from ocs.store.env import Store, StoreError
from ocs.store.tx import Tx
from ocs.store.writer import Overloaded, Writer, WriterStopped

__all__ = ["Overloaded", "Store", "StoreError", "Tx", "Writer", "WriterStopped"]
