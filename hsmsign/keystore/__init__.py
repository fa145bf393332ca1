"""Where private keys live. One module per kind of store; `KeyStores` puts them together."""

from hsmsign.keystore.stores import KeyStores

__all__ = ["KeyStores"]
