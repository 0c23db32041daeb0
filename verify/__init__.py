"""verify/: certified robustness radii (auto_LiRPA, Lipschitz) and certified-vs-attack comparison."""

__all__: list[str] = []
