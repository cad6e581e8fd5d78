"""Errors a user can act on: each message names the input at fault and the fix."""


class StoryMemError(Exception):
    """Base class: one sentence naming what was wrong, where, and what to do."""


class StoryScriptError(StoryMemError):
    """A story script (JSON) is malformed or violates the schema."""


class CheckpointError(StoryMemError):
    """A model or LoRA file is missing, of the wrong kind, or does not match the model."""


class ConditioningError(StoryMemError):
    """Shot inputs (frames, sizes, memory) cannot be turned into conditioning."""


class MemoryBankError(StoryMemError):
    """A memory bank operation or a saved bank folder is invalid."""


class OutOfMemory(StoryMemError):
    """A shot did not fit in GPU memory; the message names the setting that would fit. Finished shots are kept."""


class WriteError(StoryMemError, OSError):
    """A file or folder could not be written (disk full, no permission); what was there before is unchanged.

    Also an OSError, so code that handles write failures as OSError keeps working."""


class GenerationInterrupted(StoryMemError):
    """The user stopped generation; nothing of the interrupted shot was kept."""


class SamplerError(StoryMemError):
    """Sampler settings (solver name, steps, shift) are invalid, or a solver is stepped past its schedule."""


class DownloadError(StoryMemError):
    """A model file could not be fetched, or what arrived is not the file; nothing was put under its name."""


class FolderBusy(StoryMemError):
    """Another story run is writing the story folder; the message says who and since when."""


class StoryFolderError(StoryMemError):
    """A story's output folder cannot take this run: another story or other settings made it, a shot's files are
    missing, or the path cannot hold a story."""


class SettingsError(StoryMemError):
    """A run's or a node's setting is invalid or conflicts with another (modes, size, frames, memory, seed, device,
    preset, connected inputs); the message names the setting and a value that works."""


class MissingPackage(StoryMemError):
    """A package the pack needs is not installed, or its build lacks what is needed; the message names the install."""
