"""Analytics kernels: pure functions, arrays and explicit state in, arrays out.

No I/O, no globals, no asyncio or paho here. Each kernel is compiled by Numba
when it is importable and runs as plain Python otherwise (see :mod:`._jit`).
"""
