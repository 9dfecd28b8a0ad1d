"""Shared fixtures: a throwaway restorer registered from outside histodiff, as a user's package would."""

import os
from pathlib import Path

import pytest

PLUGIN = '''
import numpy as np
from histodiff.restorers import Restorer, register

@register
class Throwaway(Restorer):
    "Fills the artifact with the mean colour of the tile: a restorer registered by another package."
    name, title, about = 'throwaway', 'throwaway (mean colour)', 'a test restorer registered through an entry point'
    def _restore(self, images, masks, generator):
        mean = images.reshape(len(images), -1, 3).mean(1).round().astype(np.uint8)
        return np.where(masks[..., None], mean[:, None, None], images)
'''


@pytest.fixture(scope='session')
def throwaway_plugin(tmp_path_factory):
    """A folder to put on PYTHONPATH: a module registering the restorer 'throwaway', and the dist-info whose
    entry point (group histodiff.restorers) names it, the way `pip install` of a plugin package leaves them."""
    root = tmp_path_factory.mktemp('plugin')
    (root / 'throwaway_restorer.py').write_text(PLUGIN)
    info = root / 'throwaway_restorer-0.1.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: throwaway-restorer\nVersion: 0.1\n')
    (info / 'entry_points.txt').write_text('[histodiff.restorers]\nthrowaway = throwaway_restorer\n')
    return root


def plugin_env(root: Path) -> dict:
    "The environment of a subprocess that sees the plugin."
    return {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(root), os.environ.get('PYTHONPATH', '')]))}
