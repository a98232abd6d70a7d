"""Limits that Microsoft documents for the Web API, and the defaults we derive from them.

The one home of these numbers (reference 3.2, 6.1): the configuration's bounds, the governor's
concurrency cap and the request headers all read them here.
"""

from __future__ import annotations

#: Concurrent requests per user per web server before 429 (0x80072326).
CONCURRENT_REQUESTS_PER_USER = 52
#: `Prefer: odata.maxpagesize` is honoured up to 5,000 rows per page for standard tables.
MAX_PAGE_SIZE = 5000
#: We ask for the largest page: fewer requests against the 6,000-per-5-minutes budget.
DEFAULT_PAGE_SIZE = MAX_PAGE_SIZE
