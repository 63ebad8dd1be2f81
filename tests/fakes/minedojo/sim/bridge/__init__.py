"""`minedojo.sim.bridge` of the fake package."""
