"""The packed sparse-int8 format (PSQ): spec in ``FORMAT.md``, constants in ``layout``.

Modules: ``layout`` (byte layout, field codes, the table ``Record``), ``bitpack`` (LSB-first
fields), ``golomb`` (gap index), ``metadata`` (canonical JSON), ``encode`` (one tensor),
``writer`` (the file), ``stats`` (size accounting), ``errors`` (``FormatError``).

Example:
    >>> from compress.format.errors import FormatError
    >>> issubclass(FormatError, ValueError)
    True
"""
