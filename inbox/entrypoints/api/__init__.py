"""The HTTP edge: parse, authorize, call one service or query, return."""
