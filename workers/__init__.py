"""The worker actor and its transfer/compute pipeline; the per-tile image operations (later issues)."""

__all__: list[str] = []
