"""The memory's surfels, who observed them, and a spatial hash for merging new ones.

Storage (all append-only: an add costs in proportion to what it adds, amortised over the
rare doubling of a buffer or of the hash table, whatever the size of the memory):

- surfels: ``position [M,3]``, ``normal [M,3]``, ``radius [M]`` (float32);
- observations: a coordinate list of unique ``(surfel, frame)`` pairs, ``pair_surfel [P]``
  and ``pair_frame [P]`` (int64), the sparse "which frames saw this surfel" relation;
- a spatial hash with cell size ``merge_distance``: ``head [B]`` (first surfel of each
  bucket's chain, -1 if empty) and ``next [M]``. Every chain is kept in *descending*
  surfel order (new surfels are linked in front), so dropping the newest surfels only
  means moving bucket heads past them (:meth:`SurfelIndex.truncate`).

Merging (VMem's ``merge_surfels``, vectorised): a new surfel joins the *nearest* stored
surfel within ``merge_distance`` whose normal agrees (dot product above
``normal_threshold``); merging records the observation and leaves the surfel unchanged.
Surfels that find no partner are added. Candidates come from the 27 hash cells around
the new surfel; the chains are walked for all new surfels at once.

Differences from VMem, deliberately:

- VMem rebuilds a Python octree over all surfels for every new frame; the hash here is
  updated in place at a cost proportional to the new surfels.
- VMem recomputes the merge distance (mean + 0.5 std of all radii) for every frame. Here
  it is computed once, from the first surfels added (same rule), and then fixed: it is
  the hash's cell size, and a memory's scale is fixed by its first frames anyway.
  ``MergeSettings.merge_distance`` sets it explicitly.
- VMem merges into the *first* qualifying neighbour in octree order; here the nearest
  (ties to the lower index), so the result does not depend on insertion history and a
  reloaded memory merges exactly like the original.
- One frame's surfels merging into the same surfel record one observation, not several.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .surfels import SurfelInputError, Surfels

_PRIMES = (73856093, 19349663, 83492791)  # spatial-hash multipliers (Teschner et al. 2003)
_MIN_BUCKETS = 1 << 12
_BUCKETS_PER_SURFEL = 4
_NEIGHBOURS = torch.stack(torch.meshgrid(*(torch.arange(-1, 2),) * 3, indexing="ij"), -1).reshape(27, 3)
_LOW32 = (1 << 32) - 1
_NONE = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class MergeSettings:
    """How new surfels merge into the memory (defaults follow VMem's ``surfel`` config).

    ``normal_threshold`` above 1 disables merging (every surfel is kept).
    ``merge_distance`` None: derived from the first surfels added (see module doc).
    """

    normal_threshold: float = 0.6
    merge_distance: Optional[float] = None

    def validate(self) -> None:
        if self.merge_distance is not None and not self.merge_distance > 0:
            raise SurfelInputError("merge_distance", f"is {self.merge_distance}", "a positive number or None")


class Rows:
    """A tensor that grows by appending rows, at amortised cost proportional to the rows
    appended (spare capacity doubles when full). ``data`` is a view of the filled rows."""

    def __init__(self, row_shape: tuple[int, ...], dtype: torch.dtype):
        self._buffer = torch.empty((16, *row_shape), dtype=dtype)
        self._length = 0

    def __len__(self) -> int:
        return self._length

    @property
    def data(self) -> torch.Tensor:
        return self._buffer[: self._length]

    def append(self, rows: torch.Tensor) -> None:
        need = self._length + rows.shape[0]
        if need > self._buffer.shape[0]:
            grown = torch.empty((max(need, 2 * self._buffer.shape[0]), *self._buffer.shape[1:]),
                                dtype=self._buffer.dtype)
            grown[: self._length] = self.data
            self._buffer = grown
        self._buffer[self._length: need] = rows
        self._length = need

    def truncate(self, length: int) -> None:
        self._length = min(self._length, length)


def _table_size(surfels: int, start: int = _MIN_BUCKETS) -> int:
    """Buckets for ``surfels``: the smallest power-of-two multiple of ``start`` with at least
    ``_BUCKETS_PER_SURFEL`` per surfel (few collisions, so chains hold about one cell each)."""
    size = start
    while size < _BUCKETS_PER_SURFEL * surfels:
        size *= 2
    return size


def float_keys(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pack non-negative float32 ``values`` and int ``index`` (< 2**32) into int64 keys whose
    order is (value, index): the minimum key is the smallest value, ties to the lower index."""
    bits = values.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    return (bits << 32) | index


def _partner(keys: torch.Tensor) -> torch.Tensor:
    """Surfel index held in :func:`float_keys` ``keys``, -1 for ``_NONE``."""
    return torch.where(keys != _NONE, keys & _LOW32, torch.full_like(keys, -1))


class SurfelIndex:
    """Surfels, observations and the spatial hash (see the module doc)."""

    def __init__(self, settings: MergeSettings = MergeSettings()):
        settings.validate()
        self.settings = settings
        self.merge_distance: Optional[float] = settings.merge_distance
        self._position = Rows((3,), torch.float32)
        self._normal = Rows((3,), torch.float32)
        self._radius = Rows((), torch.float32)
        self._pair_surfel = Rows((), torch.int64)
        self._pair_frame = Rows((), torch.int64)
        self._next = Rows((), torch.int64)
        self._head = torch.full((_MIN_BUCKETS,), -1, dtype=torch.int64)

    # ---- read access ---------------------------------------------------------------------
    @property
    def num_surfels(self) -> int:
        return len(self._position)

    @property
    def num_pairs(self) -> int:
        return len(self._pair_surfel)

    @property
    def position(self) -> torch.Tensor:
        return self._position.data

    @property
    def normal(self) -> torch.Tensor:
        return self._normal.data

    @property
    def radius(self) -> torch.Tensor:
        return self._radius.data

    @property
    def pair_surfel(self) -> torch.Tensor:
        return self._pair_surfel.data

    @property
    def pair_frame(self) -> torch.Tensor:
        return self._pair_frame.data

    def observation_counts(self) -> torch.Tensor:
        """``[M]`` int64: how many frames observed each surfel."""
        return torch.bincount(self.pair_surfel, minlength=self.num_surfels)

    # ---- the hash ----------------------------------------------------------------------------
    def _buckets(self, cells: torch.Tensor) -> torch.Tensor:
        """Bucket of integer cells ``[...,3]``."""
        h = (cells[..., 0] * _PRIMES[0]) ^ (cells[..., 1] * _PRIMES[1]) ^ (cells[..., 2] * _PRIMES[2])
        return h & (self._head.shape[0] - 1)

    def _cells(self, position: torch.Tensor) -> torch.Tensor:
        return torch.floor(position / self.merge_distance).to(torch.int64)

    def _link(self, first: int, buckets: torch.Tensor) -> None:
        """Put surfels ``first, first+1, ...`` (bucket ``buckets[i]``) in front of their
        chains, the highest index first."""
        ids = torch.arange(first, first + buckets.shape[0]).flip(0)
        order = torch.argsort(buckets.flip(0), stable=True)
        ids, b = ids[order], buckets.flip(0)[order]
        same = b[1:] == b[:-1]
        follower = torch.cat([torch.where(same, ids[1:], self._head[b[:-1]]), self._head[b[-1:]]])
        self._next.data[ids] = follower
        starts = torch.cat([torch.ones(1, dtype=torch.bool), ~same])
        self._head[b[starts]] = ids[starts]

    def _reserve(self, incoming: int) -> None:
        """Grow the table (rebuilding it) before ``incoming`` surfels would overfill it."""
        need = self.num_surfels + incoming
        if _BUCKETS_PER_SURFEL * need <= self._head.shape[0]:
            return
        self._head = torch.full((_table_size(need, self._head.shape[0]),), -1, dtype=torch.int64)
        if self.num_surfels:
            self._link(0, self._buckets(self._cells(self.position)))

    def _nearest_keys(self, position: torch.Tensor, normal: torch.Tensor, newer_than: int = 0) -> torch.Tensor:
        """:func:`float_keys` ``(squared distance, index)`` ``[n]`` of the nearest stored surfel
        with index >= ``newer_than`` within ``merge_distance`` whose normal agrees with the
        query's (dot above ``normal_threshold``); ``_NONE`` where there is none.

        All queries walk their 27 neighbouring cells' chains together; as chains are in
        descending order, a walk stops at the first surfel older than ``newer_than``.
        """
        n = position.shape[0]
        best = torch.full((n,), _NONE, dtype=torch.int64)
        if n == 0 or self.num_surfels <= newer_than:
            return best
        cells = self._cells(position).unsqueeze(1) + _NEIGHBOURS            # [n,27,3]
        query = torch.arange(n).repeat_interleave(27)
        current = self._head[self._buckets(cells).reshape(-1)]
        stored_p, stored_n, next_ = self.position, self.normal, self._next.data
        limit = self.merge_distance ** 2
        while True:
            live = (current >= newer_than).nonzero().squeeze(1)
            if live.numel() == 0:
                return best
            query, current = query[live], current[live]
            d2 = (position[query] - stored_p[current]).square().sum(-1)
            ok = ((d2 <= limit) & ((normal[query] * stored_n[current]).sum(-1) > self.settings.normal_threshold))
            ok = ok.nonzero().squeeze(1)
            best.scatter_reduce_(0, query[ok], float_keys(d2[ok], current[ok]), "amin")
            current = next_[current]

    def nearest(self, position: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        """For query surfels ``position/normal [n,3]``: the index of the nearest stored
        surfel within ``merge_distance`` whose normal agrees, or -1. ``[n]`` int64."""
        return _partner(self._nearest_keys(position, normal))

    # ---- changes -----------------------------------------------------------------------------
    def add_frames(self, surfels: Surfels, first_frame: int) -> tuple[int, int]:
        """Merge one step's surfels; ``surfels.frame == i`` are observed by memory frame
        ``first_frame + i``.

        Frames are merged in order, so a frame's surfels may merge into those its
        predecessors in the step added (as VMem does frame by frame). The search against
        the memory as it was before the step runs once for the whole step; per frame only
        the step's own new surfels are searched (the front of each chain).

        Returns ``(added, merged)``: surfels added, and new surfels that merged into an
        existing one. The first surfels ever added fix ``merge_distance`` if unset.
        """
        if len(surfels) == 0:
            return 0, 0
        if self.merge_distance is None:
            r = surfels.radius.double()
            self.merge_distance = float(r.mean() + 0.5 * r.std(unbiased=False))
        step_start = self.num_surfels
        before_step = self._nearest_keys(surfels.position, surfels.normal)
        added = merged = 0
        for i in surfels.frame.unique().tolist():
            pick = (surfels.frame == i).nonzero().squeeze(1)
            position, normal = surfels.position[pick], surfels.normal[pick]
            key = torch.minimum(before_step[pick], self._nearest_keys(position, normal, newer_than=step_start))
            partner = _partner(key)
            fresh = partner < 0
            first, count = self.num_surfels, int(fresh.sum())
            self._reserve(count)
            self._position.append(position[fresh])
            self._normal.append(normal[fresh])
            self._radius.append(surfels.radius[pick][fresh])
            self._next.append(torch.full((count,), -1, dtype=torch.int64))
            if count:
                self._link(first, self._buckets(self._cells(position[fresh])))
            observed = torch.cat([torch.unique(partner[~fresh]), torch.arange(first, first + count)])
            self._pair_surfel.append(observed)
            self._pair_frame.append(torch.full_like(observed, first_frame + i))
            added, merged = added + count, merged + partner.numel() - count
        return added, merged

    def truncate(self, num_surfels: int, num_pairs: int) -> None:
        """Drop every surfel from ``num_surfels`` on and every observation from ``num_pairs``
        on: exactly the state before the adds that created them."""
        if num_surfels < self.num_surfels:
            dropped = self._buckets(self._cells(self.position[num_surfels:])).unique()
            current = self._head[dropped]
            next_ = self._next.data
            while True:  # chains are in descending order: skip the dropped front of each
                stale = current >= num_surfels
                if not stale.any():
                    break
                current = torch.where(stale, next_[current.clamp_max(self.num_surfels - 1)], current)
            self._head[dropped] = current
        for rows in (self._position, self._normal, self._radius, self._next):
            rows.truncate(num_surfels)
        self._pair_surfel.truncate(num_pairs)
        self._pair_frame.truncate(num_pairs)
        if self.num_surfels == 0:
            self.merge_distance = self.settings.merge_distance
            self._head = torch.full((_MIN_BUCKETS,), -1, dtype=torch.int64)

    # ---- persistence -----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored state as contiguous tensors (copies), for saving."""
        return {"surfel.position": self.position.clone(), "surfel.normal": self.normal.clone(),
                "surfel.radius": self.radius.clone(), "observation.surfel": self.pair_surfel.clone(),
                "observation.frame": self.pair_frame.clone()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], settings: MergeSettings,
                     merge_distance: Optional[float]) -> "SurfelIndex":
        """Inverse of :meth:`tensors` (the hash is rebuilt; merging behaves identically)."""
        index = cls(settings)
        index.merge_distance = merge_distance
        index._position.append(tensors["surfel.position"].to(torch.float32))
        index._normal.append(tensors["surfel.normal"].to(torch.float32))
        index._radius.append(tensors["surfel.radius"].to(torch.float32))
        index._next.append(torch.full((index.num_surfels,), -1, dtype=torch.int64))
        index._pair_surfel.append(tensors["observation.surfel"].to(torch.int64))
        index._pair_frame.append(tensors["observation.frame"].to(torch.int64))
        if index.num_surfels:
            index._head = torch.full((_table_size(index.num_surfels),), -1, dtype=torch.int64)
            index._link(0, index._buckets(index._cells(index.position)))
        return index
