"""The report kit: the one home of every page rlinterp writes. ``markup`` escapes and
builds tables and token views, ``page`` assembles sections and figures into a
self-contained page (one stylesheet, plotly.js inlined once), ``panels`` draws the series
side by side, ``theme`` holds the palette and the paper theme. Each analysis contributes
sections; none writes a page of its own."""

from .markup import Html as Html
from .markup import empty as empty
from .markup import esc as esc
from .markup import fmt as fmt
from .markup import highlighted as highlighted
from .markup import marked as marked
from .markup import side_by_side as side_by_side
from .markup import sparkline as sparkline
from .markup import table as table
from .page import Part as Part
from .page import Section as Section
from .page import fragment as fragment
from .page import page as page
from .panels import lines_side_by_side as lines_side_by_side
from .panels import side_by_side_figure as side_by_side_figure
from .theme import PALETTE as PALETTE
from .theme import paper as paper
