#!/usr/bin/env python3
"""Writes the remote_write 1.0 and 2.0 seeds of fuzz/corpus/ (protobuf and snappy encoded by hand, so that
nothing but Python is needed). Run from anywhere: python3 fuzz/make-remote-write-seeds.py"""
import os
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus"))
import struct, os
def varint(n):
    out=b''
    n &= (1<<64)-1
    while True:
        b=n&0x7f; n>>=7
        if n: out+=bytes([b|0x80])
        else: return out+bytes([b])
def key(f,w): return varint((f<<3)|w)
def ld(f,b): return key(f,2)+varint(len(b))+b
def dbl(f,v): return key(f,1)+struct.pack('<d',v)
def i64(f,v): return key(f,0)+varint(v)
def snappy(raw):
    out=varint(len(raw)); i=0
    while i<len(raw):
        chunk=raw[i:i+65536]; n=len(chunk)-1
        if n<60: out+=bytes([n<<2])
        elif n<256: out+=bytes([60<<2,n])
        else: out+=bytes([61<<2])+struct.pack('<H',n)
        out+=chunk; i+=len(chunk)
    return out
LABELS=[("__name__","domesday_host_energy_joules_total"),("host","node-1"),("method","rapl"),("quality","measured"),("site","caen-1")]
T=1780271985000
def v1(series):
    body=b''
    for labels,samples in series:
        ts=b''.join(ld(1,ld(1,n.encode())+ld(2,v.encode())) for n,v in labels)
        ts+=b''.join(ld(2,dbl(1,v)+i64(2,t)) for v,t in samples)
        body+=ld(1,ts)
    return body
def v2(series):
    syms=[""]; ref={}
    def r(s):
        if s not in ref: ref[s]=len(syms); syms.append(s)
        return ref[s]
    tss=b''
    for labels,samples in series:
        refs=[]
        for n,v in labels: refs+= [r(n),r(v)]
        packed=b''.join(varint(x) for x in refs)
        ts=ld(1,packed)+b''.join(ld(2,dbl(1,v)+i64(2,t)) for v,t in samples)
        ts+=ld(5, i64(1,1)+i64(3,r("Host energy"))+i64(4,r("joules")))
        tss+=ld(5,ts)
    return b''.join(ld(4,s.encode()) for s in syms)+tss
good=[(LABELS,[(1000.0,T),(1015.5,T+15000)]),([("__name__","domesday_host_power_watts"),("host","node-1"),("method","rapl"),("quality","measured"),("site","caen-1")],[(66.0,T)])]
weird=[(LABELS,[(float('nan'),T),(float('inf'),T+1),(-5.0,T+2),(1e300,T+3),(1000.0,T+3),(999.0,T+2),(1.0,1000)])]
nolabels=[([],[(1.0,T)])]
bomb=[([("__name__","x"*5000),("host","h"*10000)],[(1.0,T)])]
card=[(LABELS[:1]+[("host",f"n{i}"),("method","rapl"),("quality","measured"),("site","caen-1")],[(float(i),T)]) for i in range(50)]
for name,series in [("host-energy",good),("absurd-values",weird),("no-labels",nolabels),("long-labels",bomb),("fifty-hosts",card)]:
    open(f"remote_write_1/{name}.snappy","wb").write(snappy(v1(series)))
    open(f"remote_write_2/{name}.snappy","wb").write(snappy(v2(series)))
open("remote_write_1/host-energy.raw","wb").write(v1(good))
open("remote_write_2/host-energy.raw","wb").write(v2(good))
# a snappy bomb: declares 4 GiB uncompressed
open("remote_write_1/snappy-bomb.snappy","wb").write(varint(4<<30)+bytes([0])+b'x')
open("remote_write_2/snappy-bomb.snappy","wb").write(varint(4<<30)+bytes([0])+b'x')
open("remote_write_1/truncated.snappy","wb").write(snappy(v1(good))[:40])
open("remote_write_2/bad-ref.raw","wb").write(ld(4,b"")+ld(5,ld(1,varint(1)+varint(99))))
