"""`python -m yimmo 'pkg.module:app'`: the same as the yimmo-wsgi command."""
import sys

from .cli import main

sys.exit(main())
