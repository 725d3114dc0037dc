"""The exclude filter: drop members whose path matches any of some globs from every layer.

`exclude:pattern=GLOB[,GLOB...]`. Globs match the clean member path (no leading './' or '/') with fnmatch rules,
where '*' also crosses '/'. A glob that matches a directory drops everything below it too. A whiteout is judged
by the path it hides (`etc/.wh.passwd` goes when `etc/passwd` is excluded): the same filter has removed that path
from every lower layer, so the whiteout has nothing left to hide. A hard link goes when its target is excluded,
whatever its own name, because keeping it would keep the excluded bytes under another name.

Each layer is materialized into the run's workdir and its headers scanned first; a layer where nothing matches is
passed on as the very same Layer object (origin intact, so its blob can still be passed through or mounted), and
only layers that lose members are rewritten (new diffid, no origin).
"""

from occystrap import layertar, pipeline
from occystrap.errors import UsageError
from occystrap.filters import rewrite
from occystrap.filters.search import PathMatcher


class Exclude(pipeline.Filter):
    """exclude:pattern=GLOB[,GLOB...]"""

    def __init__(self, inner, options, ctx):
        super().__init__(inner, options, ctx)
        patterns = [p.strip() for p in options.get('pattern', '').split(',') if p.strip()]
        if not patterns:
            raise UsageError('filter exclude needs a pattern: exclude:pattern=GLOB[,GLOB...]')
        self.matcher = PathMatcher(patterns)

    @classmethod
    def option_names(cls):
        return ('pattern',)

    def excluded(self, info):
        """True when a member must be dropped."""
        path = layertar.member_path(info.name)
        if not path:
            return False
        hidden = layertar.whiteout_target(path)
        if hidden is not None:
            return bool(hidden) and self.matcher.matches_tree(hidden)
        if self.matcher.matches_tree(path):
            return True
        return info.islnk() and self.matcher.matches_tree(info.linkname)

    def _filter_layer(self, layer):
        layer.materialize(self.ctx.workdir)
        if not any(self.excluded(info) for info, _ in rewrite.iter_members(layer, data=False)):
            return layer
        return rewrite.rewrite_layer(layer, lambda info: None if self.excluded(info) else info, self.ctx.workdir)

    def apply(self, image):
        layers = self.ctx.map(self._filter_layer, image.layers, cost=pipeline.layer_cost)
        if all(new is old for new, old in zip(layers, image.layers)):
            return image
        return image.replace(layers=layers)
