"""The kinds of change a mirror, a log and every watch stream speak of."""

ADDED, UPDATED, REMOVED = 1, 2, 3  # the values of every *_EVENT_TYPE enum in the protos
