"""Errors that tell the user what is wrong and how to fix it."""


class DatasetNotFoundError(FileNotFoundError):
    """The data set's files are missing and could not be downloaded."""


class ChecksumError(RuntimeError):
    """A data file's checksum does not match the published one; the file is not used."""
