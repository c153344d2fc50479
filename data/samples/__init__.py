"""What training reads: the token files and their sidecars (documents, prompt lengths, word starts)
and the windows, masks and sentence pairs cut from them."""
