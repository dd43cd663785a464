"""pytest plugin that points timm's own tests/test_models.py at the zoo's entries only.

timm's test module parametrizes its tests over ``timm.list_models(...)`` when it is imported; importing
``zoo`` here, before collection, registers our entries with timm. ``pytest_collection_modifyitems`` then
keeps the items whose ``model_name`` is one of ours and deselects the rest (timm's own ~1,600 models), and
deselects, with the reason printed in the summary, the few timm tests that cannot hold for a video model or
that download weights.
"""
import zoo

ZOO_MODELS = set(zoo.list_models())

# timm test -> why it cannot hold for (N, C, T, H, W) video models. The checks of these tests that do hold
# are run on every entry by tests/test_zoo_timm_contract.py.
CANNOT_HOLD = {
    'test_model_default_cfgs': "asserts that the unpooled output (reset_classifier(0, '') or global_pool='') is "
                               "4-D (N, C, H, W); a video model's is (N, C, T, H, W)",
    'test_model_forward_features': 'compares axes 2 and 3 of every feature map with the input height and width / '
                                   'reduction; on (N, C, T, H, W) maps axis 2 is time, whose reduction differs '
                                   '(feature_info temporal_reduction)',
}
# timm tests that load pretrained weights; entries whose weights are downloaded are left out (no network in CI).
LOADS_WEIGHTS = ('test_model_load_pretrained', 'test_model_features_pretrained')


def _downloads(arch: str) -> bool:
    cfg = zoo.get_pretrained_cfg(arch)
    return bool(cfg.url) and cfg.url.startswith(('http://', 'https://')) and not cfg.file


def _reason(item):
    callspec = getattr(item, 'callspec', None)
    model_name = callspec.params.get('model_name') if callspec else None
    arch = model_name.split('.')[0] if isinstance(model_name, str) else None
    if arch not in ZOO_MODELS:
        return 'timm model'
    if item.originalname in CANNOT_HOLD:
        return f'{item.originalname}: {CANNOT_HOLD[item.originalname]}'
    if item.originalname in LOADS_WEIGHTS and _downloads(arch):
        return f'{item.originalname}: downloads the weights'
    return None


_left_out = {}


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        reason = _reason(item)
        (keep if reason is None else drop).append(item)
        if reason is not None and reason != 'timm model':
            _left_out.setdefault(reason, []).append(item.name)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section('zoo entries left out of timm tests/test_models.py')
    for reason, names in sorted(_left_out.items()):
        terminalreporter.write_line(f'{len(names):3d}  {reason}')
