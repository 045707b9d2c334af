"""WSGI helpers: wsgi.file_wrapper (PEP 3333)."""


class FileWrapper:
    """Iterate a file-like object in blocks; yimmo's wsgi.file_wrapper."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        read = self.filelike.read
        size = self.blksize
        while True:
            data = read(size)
            if not data:
                return
            yield data
