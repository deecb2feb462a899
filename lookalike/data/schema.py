"""Names of the dataset CSV columns and of the keys of the item dicts datasets return.

These names are the users' conventions (the same as OML's CSV format); every module refers to them here.
"""

# --- CSV columns -------------------------------------------------------------------------------
LABEL = "label"
PATH = "path"
SPLIT = "split"
IS_QUERY = "is_query"
IS_GALLERY = "is_gallery"
CATEGORY = "category"
SEQUENCE = "sequence"
X1, X2, Y1, Y2 = "x_1", "x_2", "y_1", "y_2"
BBOX_COLUMNS = (X1, X2, Y1, Y2)

REQUIRED_COLUMNS = (LABEL, PATH, SPLIT, IS_QUERY, IS_GALLERY)
SPLIT_TRAIN = "train"
SPLIT_VALIDATION = "validation"
SPLITS = (SPLIT_TRAIN, SPLIT_VALIDATION)

# --- keys of the item dicts a dataset returns ---------------------------------------------------
INPUT_KEY = "input"
LABEL_KEY = "label"
INDEX_KEY = "index"
PATH_KEY = "path"
IS_QUERY_KEY = "is_query"
IS_GALLERY_KEY = "is_gallery"
CATEGORY_KEY = "category"
SEQUENCE_KEY = "sequence"
