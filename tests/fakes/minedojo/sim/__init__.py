"""`minedojo.sim` of the fake package: the stand-in's InventoryItem."""
from actors.envs.fake_minedojo import InventoryItem

__all__ = ["InventoryItem"]
