"""Writing files so that a reader never sees half of one: a temp name beside the target, every write checked,
the size on disk compared with what was written, then a rename. A write that fails (a full disk, a short
write) is one WriteError naming the final path and the OS reason; nothing is left under the final name.

Why a file object of our own: Pillow's encoders write straight to a descriptor when the file object has
one and ignore short writes (a write that stores fewer bytes than asked returns a count, not an error), so
a full disk left JPEGs cut short under their final names. Here every byte goes through `os.write` in a loop:
the part a short write left is written again, and that second write raises (ENOSPC).
"""
import errno
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class WriteError(OSError):
    """A file that could not be written: str() is `cannot write <path>: <OS reason>`."""

    def __init__(self, path, cause):
        super().__init__(getattr(cause, "errno", None) or errno.EIO,
                         getattr(cause, "strerror", None) or str(cause), str(path))

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


class CheckedFile(io.RawIOBase):
    """A seekable binary file over a descriptor that writes every byte or raises, and hides its descriptor
    (fileno() is unsupported, so Pillow, numpy and matplotlib write through write())."""

    def __init__(self, fd, path):
        super().__init__()
        self._fd, self.name, self.written = fd, str(path), 0  # written: the file's length as we wrote it

    def writable(self):
        return True

    def seekable(self):
        return True

    def fileno(self):
        raise io.UnsupportedOperation("write through the file object: its writes are checked")

    def _check_open(self):
        if self.closed:  # its descriptor is closed and its number may be another file's by now
            raise ValueError(f"I/O operation on closed file {self.name}")

    def write(self, data):
        self._check_open()
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = os.write(self._fd, view[done:])  # short on a full disk; the retry then raises
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
            self.written = max(self.written, os.lseek(self._fd, 0, os.SEEK_CUR))
        except OSError as e:
            raise WriteError(self.name, e) from None
        return done

    def seek(self, pos, whence=os.SEEK_SET):
        self._check_open()
        return os.lseek(self._fd, pos, whence)

    def tell(self):
        self._check_open()
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def truncate(self, size=None):
        size = self.tell() if size is None else size
        os.ftruncate(self._fd, size)
        self.written = size
        return size

    def close(self):  # the descriptor belongs to atomic_file, which closes it after this
        super().close()


@contextmanager
def atomic_file(path):
    """Yield a CheckedFile open at `.<name>.<random>.tmp` beside `path`; on success its size on disk is
    checked against the bytes written, it is flushed to disk and renamed to `path` with the permissions a
    plain open() would give (mkstemp's are 0600); on any error removed. Write failures raise WriteError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(path, e) from None
    f = CheckedFile(fd, path)
    try:
        yield f
        try:
            on_disk = os.fstat(fd).st_size
            if on_disk != f.written:
                raise OSError(errno.EIO, f"{on_disk:,} of {f.written:,} bytes reached the disk")
            os.fchmod(fd, 0o666 & ~_umask())
            os.fsync(fd)
            f.close()
            os.close(fd)
            fd = None
            os.replace(tmp, path)
        except OSError as e:
            raise WriteError(path, e) from None
    except BaseException:
        if fd is not None:
            f.close()
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path, data):
    """`data` written to `path` through atomic_file: whole, or not at all."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def write_text(path, text):
    return write_bytes(path, text.encode())


class LineLog:
    """An append-only log of whole lines (log.jsonl): each write() adds its lines with checked writes, and
    a write that cannot finish is cut back off, so the file never ends in half a line (a reader skips
    nothing it should read). Failures raise WriteError."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise WriteError(self.path, e) from None

    def write(self, text):
        start = os.fstat(self._fd).st_size
        try:
            CheckedFile(self._fd, self.path).write(text.encode())
        except WriteError:
            os.ftruncate(self._fd, start)
            raise
        return len(text)

    def flush(self):
        pass  # every write() has reached the file

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _umask():
    mask = os.umask(0)  # reading it means setting it
    os.umask(mask)
    return mask
