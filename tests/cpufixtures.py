"""cpuinfo texts of the CPU kinds the precision tests fake, and the helper that
points `fcn_graph.host.cpuinfo` at one of them."""

from fcn_graph.host import cpuinfo

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni avx512vl

processor\t: 1
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni avx512vl
"""
ZEN3 = "processor\t: 0\nmodel name\t: AMD EPYC 7R13\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f avx_vnni amx_bf16 amx_tile amx_int8\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n"


def fake_cpuinfo(monkeypatch, tmp_path, text):
    """Make `text` this process's cpuinfo (a file in `tmp_path`)."""
    fake = tmp_path / "fake_cpuinfo"
    fake.write_text(text)
    monkeypatch.setattr(cpuinfo, "CPUINFO_PATH", str(fake))
