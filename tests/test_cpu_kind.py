"""cpuinfo.cpu_kind: the CPU kind figures are kept by, from cpuinfo text."""

import pytest

from fcn_graph.host import cpuinfo


def _cpuinfo(vendor, family, model, flags):
    return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
            f"model\t\t: {model}\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")


AVX2 = "fpu sse2 avx avx2 fma"
AVX512 = AVX2 + " avx512f avx512_bf16 avx512_vnni"


@pytest.mark.parametrize("vendor, family, model, flags, kind", [
    ("AuthenticAMD", 25, 1, AVX2, "AMD Zen 3"),          # EPYC 7003 (Milan)
    ("AuthenticAMD", 25, 33, AVX2, "AMD Zen 3"),         # Ryzen 5000 (0x21)
    ("AuthenticAMD", 25, 17, AVX512, "AMD Zen 4"),       # EPYC 9004 (Genoa, 0x11)
    ("AuthenticAMD", 25, 97, AVX512, "AMD Zen 4"),       # Ryzen 7000 (0x61)
    ("AuthenticAMD", 25, 160, AVX512, "AMD Zen 4"),      # EPYC 97x4 (0xA0)
    ("AuthenticAMD", 26, 2, AVX512, "AMD Zen 5"),
    ("AuthenticAMD", 23, 49, AVX2, "AMD Zen 2"),         # EPYC 7002 (0x31)
    ("AuthenticAMD", 25, 144, AVX2, "AMD, AVX2"),        # a model outside the table
    ("GenuineIntel", 6, 143, AVX512 + " amx_tile amx_bf16", "Intel, AVX-512 with AMX"),
    ("GenuineIntel", 6, 85, AVX512, "Intel, AVX-512"),
    ("GenuineIntel", 6, 63, AVX2, "Intel, AVX2"),
    ("GenuineIntel", 6, 23, "fpu sse2", "Intel, no AVX2"),
])
def test_cpu_kind(vendor, family, model, flags, kind):
    assert cpuinfo.cpu_kind(_cpuinfo(vendor, family, model, flags)) == kind


def test_cpu_kind_of_nothing_is_empty():
    assert cpuinfo.cpu_kind("") == ""
    assert cpuinfo.cpu_kind("processor : 0\nFeatures : fp asimd\n") == ""


def test_a_garbled_family_is_not_a_zen():
    text = _cpuinfo("AuthenticAMD", "twenty-five", "0x11x", AVX512)
    assert cpuinfo.cpu_kind(text) == "AMD, AVX-512"
