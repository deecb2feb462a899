"""Names of the dataset CSV columns and of the keys of the item dicts datasets return.

These names are the users' conventions (the same as OML's CSV format); every module refers to them here.
"""

# --- CSV columns -------------------------------------------------------------------------------
LABEL = "label"
PATH = "path"
TEXT = "text"
SPLIT = "split"
IS_QUERY = "is_query"
IS_GALLERY = "is_gallery"
CATEGORY = "category"
SEQUENCE = "sequence"
X1, X2, Y1, Y2 = "x_1", "x_2", "y_1", "y_2"
BBOX_COLUMNS = (X1, X2, Y1, Y2)

REQUIRED_COLUMNS = (LABEL, PATH, SPLIT, IS_QUERY, IS_GALLERY)  # for images; texts have TEXT in place of PATH
#: the columns that hold an item's content, one of them required: an image path or a text
ITEM_COLUMNS = (PATH, TEXT)
#: what the items of a table are: "image" (column path), "text" (column text), "auto" (text only without path)
MODALITIES = ("image", "text", "auto")
SPLIT_TRAIN = "train"
SPLIT_VALIDATION = "validation"
SPLITS = (SPLIT_TRAIN, SPLIT_VALIDATION)

# --- keys of the item dicts a dataset returns ---------------------------------------------------
INPUT_KEY = "input"
LABEL_KEY = "label"
INDEX_KEY = "index"
PATH_KEY = "path"
TEXT_KEY = "text"
IS_QUERY_KEY = "is_query"
IS_GALLERY_KEY = "is_gallery"
CATEGORY_KEY = "category"
SEQUENCE_KEY = "sequence"
