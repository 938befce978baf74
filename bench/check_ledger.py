#!/usr/bin/env python3
"""Zero-loss check after `domesday-agent simulate --report FILE`: for every
simulated host, the collector's energy API over [first acknowledged sample,
last acknowledged sample] must equal the increase the collector acknowledged.

Usage: check_ledger.py REPORT.csv http://127.0.0.1:9956 SITE
"""
import csv, json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor

report, base, site = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
rows = [r for r in csv.DictReader(open(report))]

def check(r):
    if not r["first_acked_ms"]:
        return ("no_ack", r["host"], None, None)
    first, last = int(r["first_acked_ms"]), int(r["last_acked_ms"])
    frm, to = first // 60000 * 60000, (last // 60000 + 1) * 60000
    # The ledger may hold more than was acknowledged (a commit whose answer was cut off),
    # never less: compare exactly on [first acked, last acked] only when every request was acknowledged.
    url = f"{base}/api/v1/energy?site={site}&host={r['host']}&from={frm}&to={to}"
    e = json.load(urllib.request.urlopen(url))
    want = round(float(r["acked_increase_joules"]) * 1e6)
    got = int(e["energy_microjoules"])
    complete = r["requests"] == r["acknowledged"]
    ok = got == want if complete else got >= want
    return ("ok" if ok else "mismatch", r["host"], want, got)

with ThreadPoolExecutor(8) as pool:
    results = list(pool.map(check, rows))
counts = {}
for k, *_ in results:
    counts[k] = counts.get(k, 0) + 1
bad = [x for x in results if x[0] == "mismatch"]
print(f"hosts checked: {len(results)}; " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
for b in bad[:10]:
    print("MISMATCH", b)
sys.exit(1 if bad else 0)
