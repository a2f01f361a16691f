# SPDX-License-Identifier: Apache-2.0
import sys

from .driver import main

sys.exit(main())
