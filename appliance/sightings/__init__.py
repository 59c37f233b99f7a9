"""Faces seen at the door, kept encrypted for a bounded time: each access event's face
(``events.keep_crops_h``, for "this is not X") and the unknown visitors' faces grouped in clusters
(``[unknowns]``). See :mod:`.store` (the database), :mod:`.keeper` (the daemon's writer),
:mod:`.impostors` ("this is not X") and :mod:`.unknowns` (listing, purge, enrolment of a cluster).

Imports nothing heavy here: each module is imported where it is used.
"""
