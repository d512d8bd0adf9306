"""Input the objectives cannot use: a data set, a search space, a device, a name. Each
message names the problem and the fix, on one line; the command line shows it as one
``search: error:`` line."""


class InputError(ValueError):
    """Bad input to the objectives."""


class DataError(InputError):
    """Data is missing, unreadable or corrupt; the message says which file and what to do."""


class SpaceError(InputError):
    """A search space file that cannot be used; the message names the file, the entry and the fix."""


class DeviceError(InputError):
    """A device this machine cannot train on."""


class UnknownDataset(InputError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown objective {name!r}; choose one of: {', '.join(known)}")
