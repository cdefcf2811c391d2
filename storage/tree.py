"""The branch on screen of a message tree, and the versions of each turn.

A chat's messages form a tree: each has a parent (None for the first) and siblings
are versions of one turn. The branch on screen starts at the active root and
follows the active child at each step. Pure functions over plain rows, so the
repository, the journal overlay and the exports all agree on what "on screen" is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar


class Node(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def parent_id(self) -> int | None: ...
    @property
    def active(self) -> bool: ...


N = TypeVar("N", bound=Node)


def children_of(nodes: Iterable[N]) -> dict[int | None, list[N]]:
    """Children per parent id (None: the roots), each list in storing order."""
    children: dict[int | None, list[N]] = defaultdict(list)
    for node in sorted(nodes, key=lambda n: n.seq):
        children[node.parent_id].append(node)
    return children


def shown_child(siblings: Sequence[N]) -> N:
    """The active version; if a race left none or several active, the newest active (else newest) one."""
    active = [node for node in siblings if node.active]
    return (active or list(siblings))[-1]


def branch(nodes: Iterable[N]) -> list[N]:
    """The path on screen, from the root to the leaf."""
    children = children_of(nodes)
    path: list[N] = []
    parent: int | None = None
    seen: set[int] = set()
    while children.get(parent):
        node = shown_child(children[parent])
        if node.id in seen:  # cannot happen with a foreign key, but never loop
            break
        seen.add(node.id)
        path.append(node)
        parent = node.id
    return path


def path_to(nodes: Iterable[N], node_id: int) -> list[N]:
    """The messages from the root down to ``node_id`` (inclusive); [] if unknown."""
    by_id = {node.id: node for node in nodes}
    path: list[N] = []
    current = by_id.get(node_id)
    while current is not None and len(path) <= len(by_id):
        path.append(current)
        current = by_id.get(current.parent_id) if current.parent_id is not None else None
    return path[::-1]


def subtree_ids(nodes: Iterable[Node], root_id: int) -> set[int]:
    """``root_id`` and every message below it."""
    children = children_of(nodes)
    found, stack = set(), [root_id]
    while stack:
        current = stack.pop()
        if current in found:
            continue
        found.add(current)
        stack.extend(child.id for child in children.get(current, []))
    return found
