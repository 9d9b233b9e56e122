import threading

queue_lock = threading.Lock()  # the real one is a FIFOLock; order does not matter in-process


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            res = func(*args, **kwargs)

        return res

    return f
