from swarmless.compat.dockerrun import *  # noqa: F403
