"""Array-backed sum tree: O(log N) proportional sampling and updates, vectorised over many items.

Prioritised replay needs to draw thousands of starts per second from up to millions of slots; a flat
cumulative sum would cost O(N) per priority update, the tree keeps both operations logarithmic.
"""
from __future__ import annotations

import numpy as np


class SumTree:
    """Leaves hold non-negative masses; every internal node holds the sum of its two children."""

    def __init__(self, num_leaves: int) -> None:
        if num_leaves < 1:
            raise ValueError(f"num_leaves must be >= 1, got {num_leaves}")
        # At least two leaves so the root (index 1) is always an internal node.
        self._leaves = 1 << max(1, int(num_leaves - 1).bit_length())
        self._depth = self._leaves.bit_length() - 1
        self._tree = np.zeros(2 * self._leaves, dtype=np.float64)

    @property
    def nbytes(self) -> int:
        return self._tree.nbytes

    def get(self, index: np.ndarray) -> np.ndarray:
        return self._tree[np.asarray(index) + self._leaves]

    def set(self, index: np.ndarray, mass: np.ndarray | float) -> None:
        """Set leaf masses; ancestors are recomputed from their children, so no rounding drift builds up."""
        nodes = np.asarray(index, dtype=np.int64) + self._leaves
        if nodes.size == 0:
            return
        self._tree[nodes] = mass
        nodes = np.unique(nodes // 2)
        while True:
            self._tree[nodes] = self._tree[2 * nodes] + self._tree[2 * nodes + 1]
            if nodes[0] == 1:
                return
            nodes = np.unique(nodes // 2)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw n leaf indices with probability proportional to their mass (requires total > 0)."""
        target = rng.random(n) * self._tree[1]
        node = np.ones(n, dtype=np.int64)
        for _ in range(self._depth):
            left = self._tree[2 * node]
            go_right = target >= left
            target = np.where(go_right, target - left, target)
            node = 2 * node + go_right
        return node - self._leaves
