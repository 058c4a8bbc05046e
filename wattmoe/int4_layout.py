"""Sizes of the packed int4 weight layout that code without torch needs too.

`wattmoe.moe.quant` packs and reorders the codes (with torch); placement counts the bytes of
the fused kernels' copy (`wattmoe.placement.base.ExpertShape`) and imports no torch. Both
read the sizes from here, so that they cannot drift apart.
"""

from __future__ import annotations

#: `wattmoe.moe.quant.fragment_words` reorders a packed row's bytes within blocks of this many;
#: the fused int4 kernels read a matrix's codes as fragment words only where its packed rows
#: are whole blocks.
FRAGMENT_BYTES = 32
