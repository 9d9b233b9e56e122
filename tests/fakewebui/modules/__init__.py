"""Stand-in for AUTOMATIC1111's ``modules`` package (tier-1 tests only).

Real files with the real names and signatures, cut down to what an extension's host adapter
touches.  The imitated release is chosen in :mod:`modules._standin`; see ``tests/fakewebui``.
(The real ``modules`` is a namespace package; this one has an ``__init__`` so that no other
directory called ``modules`` on ``sys.path`` can merge into it.)
"""
