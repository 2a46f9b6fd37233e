"""The one error hierarchy of callmood.

    CallmoodError
    ├── ConfigError            a setting is missing or invalid (raised at start)
    ├── InputError             a recording can never succeed: fail it, do not retry
    │   ├── InputNotAllowedError   outside the configured input roots / scheme not enabled
    │   ├── AudioDecodeError       missing, empty, truncated, corrupt or not audio
    │   └── UnsupportedAudioError  decodes, but its shape is out of range (rate, channels, length)
    ├── PayloadError           a queued task payload fails validation: fail it, do not retry
    ├── ModelError             the ONNX model or its card is missing or inconsistent: the
    │                          worker's deployment, not the call; `callmood worker` refuses
    │                          to start with one, and a task meeting one retries with backoff
    └── TransientError         database or broker unavailable: retry with backoff
        └── PartialSendError   the broker went away after some of a batch of tasks were
                               published: those are sent, the rest are not

Tasks decide retries from the class alone, so every raise site picks the class that says
whether trying again could ever help.
"""


class CallmoodError(Exception):
    """Base class of every error callmood raises on purpose."""


class ConfigError(CallmoodError):
    """A setting is missing or invalid; the message names the setting and its valid values."""


class InputError(CallmoodError):
    """The recording itself is unusable; retrying cannot help."""


class InputNotAllowedError(InputError):
    """The URI is outside the configured input roots, or its scheme is not enabled."""


class AudioDecodeError(InputError):
    """The file is missing, empty, truncated, corrupt or not audio."""


class UnsupportedAudioError(InputError):
    """The audio decodes but is out of the supported range (sample rate, channels, length)."""


class PayloadError(CallmoodError):
    """A task payload is malformed; the message names the field and what it accepts."""


class ModelError(CallmoodError):
    """The emotion model or its card is missing, unreadable or inconsistent: a deployment
    problem, so tasks retry (with backoff) rather than blame the call."""


class TransientError(CallmoodError):
    """A dependency (database, broker, the recordings' network storage) is unavailable for now;
    the task may be retried."""


class PartialSendError(TransientError):
    """Publishing a list of tasks failed after the first ``len(task_ids)`` were published:
    those are in the broker and must stay marked sent; only the rest are to be sent again."""

    def __init__(self, message: str, task_ids: list[str]) -> None:
        super().__init__(message)
        self.task_ids = list(task_ids)  # of the published tasks, in the requests' order
