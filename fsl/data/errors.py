"""Errors that tell the user what is wrong and how to fix it."""
from fsl.errors import FslError


class DatasetNotFoundError(FslError, FileNotFoundError):
    """The data set's files are missing and could not be downloaded."""


class ChecksumError(FslError, RuntimeError):
    """A data file's checksum does not match the published one; the file is not used."""
