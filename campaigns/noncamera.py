from .base import Context, Result, timed


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    r = Result("noncamera")
    r.skipped = "not yet"
    return r
