"""The fixed text every toy tokenizer of the tiny presets is built from, so their token ids never change."""

import re

#: Fixed text whose words become whole-word tokens (DreamBench/VideoBench style prompt words).
TINY_CORPUS = """
a an the of in on at with and or to from by for into onto over under near behind beside next top bottom
is are be being sits sitting stands standing runs running walks walking jumps jumping plays playing
swims swimming flies flying floats floating rides riding moves moving rolls rolling looks looking
holds holding wears wearing reads reading eats eating drinks drinking sleeps sleeping dances dancing
dog dogs cat cats puppy kitten bird duck toy toys teddy bear bears monster robot backpack bag bowl can
candle clock sneaker sneakers shoe shoes boot boots glasses sunglasses teapot vase plushie stuffed
animal car cars bike bicycle biplane plane boat train truck chair table cup mug bottle hat jacket
sweater shirt dress girl boy man woman person child people face hair hands
red blue green yellow purple pink orange black white brown gray grey golden silver shiny wet dirty
cube shaped small big large tiny little old new soft warm cold bright dark sunny rainy snowy cozy
jungle snow beach street cobblestone fabric wooden floor city mountain mountains house forest rug
grass field park garden room window kitchen desk lake river sea ocean sky clouds sun moon night day
background foreground sunset sunrise light sunlight curtains book road bridge tree trees flowers
water sand rock rocks stone wall door lamp sofa bed pillow blanket box basket ball leaves autumn
winter summer spring camera video scene view close up slowly quickly gently around across through
its their his her it they camera pans zooms
circle square triangle shape bouncing growing spinning sliding larger smaller middle left right
"""


def corpus_words() -> list[str]:
    """The distinct lower-case words of :data:`TINY_CORPUS`, sorted (the whole-word tokens of the toy tokenizers)."""
    return sorted(set(re.findall(r"[a-z]+", TINY_CORPUS.lower())))
