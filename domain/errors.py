"""Domain errors: business rules say no. Edges map each kind to one HTTP status."""


class DomainError(Exception):
    """Base class of every business-rule refusal."""


class InvalidCommand(DomainError):
    """The command is malformed for the domain (unknown channel, empty text...)."""


class NotAllowed(DomainError):
    """The actor's role does not permit this command."""


class NotFound(DomainError):
    """No such thing, or not visible to the actor (no existence leak)."""


class Conflict(DomainError):
    """The command conflicts with the current state (resolved room, concurrent change...)."""


class AlreadyExists(Conflict):
    """Something with this identity exists already."""
