"""`minedojo.sim.bridge.mc_instance` of the fake package: the stand-in's InstanceManager."""
from actors.envs.fake_minedojo import InstanceManager

__all__ = ["InstanceManager"]
