"""The package face is pinned: adding or removing a public name is a deliberate change."""

import swarmless


def test_all_is_sorted_and_complete() -> None:
    assert swarmless.__all__ == sorted(swarmless.__all__)
    for name in swarmless.__all__:
        assert hasattr(swarmless, name), name


def test_public_names() -> None:
    assert set(swarmless.__all__) >= {
        "AsyncClient",
        "Client",
        "ContainerError",
        "EngineUnavailable",
        "GatewayUnavailable",
        "ImageNotFound",
        "Run",
        "RunTimeout",
        "SwarmlessError",
        "from_env",
    }


def test_exceptions_share_one_root() -> None:
    for name in swarmless.__all__:
        obj = getattr(swarmless, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, swarmless.SwarmlessError), name
