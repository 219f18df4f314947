_vmcryptfs() {
    local i cur prev opts cmd
    COMPREPLY=()
    if [[ "${BASH_VERSINFO[0]}" -ge 4 ]]; then
        cur="$2"
    else
        cur="${COMP_WORDS[COMP_CWORD]}"
    fi
    prev="$3"
    cmd=""
    opts=""

    for i in "${COMP_WORDS[@]:0:COMP_CWORD}"
    do
        case "${cmd},${i}" in
            ",$1")
                cmd="vmcryptfs"
                ;;
            vmcryptfs,fsck)
                cmd="vmcryptfs__subcmd__fsck"
                ;;
            vmcryptfs,help)
                cmd="vmcryptfs__subcmd__help"
                ;;
            vmcryptfs,mount)
                cmd="vmcryptfs__subcmd__mount"
                ;;
            vmcryptfs,provider)
                cmd="vmcryptfs__subcmd__provider"
                ;;
            vmcryptfs,rekey)
                cmd="vmcryptfs__subcmd__rekey"
                ;;
            vmcryptfs,status)
                cmd="vmcryptfs__subcmd__status"
                ;;
            vmcryptfs,vm)
                cmd="vmcryptfs__subcmd__vm"
                ;;
            vmcryptfs__subcmd__help,fsck)
                cmd="vmcryptfs__subcmd__help__subcmd__fsck"
                ;;
            vmcryptfs__subcmd__help,help)
                cmd="vmcryptfs__subcmd__help__subcmd__help"
                ;;
            vmcryptfs__subcmd__help,mount)
                cmd="vmcryptfs__subcmd__help__subcmd__mount"
                ;;
            vmcryptfs__subcmd__help,provider)
                cmd="vmcryptfs__subcmd__help__subcmd__provider"
                ;;
            vmcryptfs__subcmd__help,rekey)
                cmd="vmcryptfs__subcmd__help__subcmd__rekey"
                ;;
            vmcryptfs__subcmd__help,status)
                cmd="vmcryptfs__subcmd__help__subcmd__status"
                ;;
            vmcryptfs__subcmd__help,vm)
                cmd="vmcryptfs__subcmd__help__subcmd__vm"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,accept)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__accept"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,add-kmip)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__add__subcmd__kmip"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,destroy)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__destroy"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,export)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__export"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,import)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__import"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,init)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__init"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,list)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__list"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,retire)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__retire"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,rotate)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__rotate"
                ;;
            vmcryptfs__subcmd__help__subcmd__provider,set-default)
                cmd="vmcryptfs__subcmd__help__subcmd__provider__subcmd__set__subcmd__default"
                ;;
            vmcryptfs__subcmd__help__subcmd__vm,accept-rollback)
                cmd="vmcryptfs__subcmd__help__subcmd__vm__subcmd__accept__subcmd__rollback"
                ;;
            vmcryptfs__subcmd__help__subcmd__vm,convert-format)
                cmd="vmcryptfs__subcmd__help__subcmd__vm__subcmd__convert__subcmd__format"
                ;;
            vmcryptfs__subcmd__help__subcmd__vm,create)
                cmd="vmcryptfs__subcmd__help__subcmd__vm__subcmd__create"
                ;;
            vmcryptfs__subcmd__help__subcmd__vm,decrypt-disks)
                cmd="vmcryptfs__subcmd__help__subcmd__vm__subcmd__decrypt__subcmd__disks"
                ;;
            vmcryptfs__subcmd__help__subcmd__vm,encrypt)
                cmd="vmcryptfs__subcmd__help__subcmd__vm__subcmd__encrypt"
                ;;
            vmcryptfs__subcmd__help__subcmd__vm,encrypt-disks)
                cmd="vmcryptfs__subcmd__help__subcmd__vm__subcmd__encrypt__subcmd__disks"
                ;;
            vmcryptfs__subcmd__help__subcmd__vm,rekey)
                cmd="vmcryptfs__subcmd__help__subcmd__vm__subcmd__rekey"
                ;;
            vmcryptfs__subcmd__help__subcmd__vm,set-disk-pattern)
                cmd="vmcryptfs__subcmd__help__subcmd__vm__subcmd__set__subcmd__disk__subcmd__pattern"
                ;;
            vmcryptfs__subcmd__help__subcmd__vm,status)
                cmd="vmcryptfs__subcmd__help__subcmd__vm__subcmd__status"
                ;;
            vmcryptfs__subcmd__provider,accept)
                cmd="vmcryptfs__subcmd__provider__subcmd__accept"
                ;;
            vmcryptfs__subcmd__provider,add-kmip)
                cmd="vmcryptfs__subcmd__provider__subcmd__add__subcmd__kmip"
                ;;
            vmcryptfs__subcmd__provider,destroy)
                cmd="vmcryptfs__subcmd__provider__subcmd__destroy"
                ;;
            vmcryptfs__subcmd__provider,export)
                cmd="vmcryptfs__subcmd__provider__subcmd__export"
                ;;
            vmcryptfs__subcmd__provider,help)
                cmd="vmcryptfs__subcmd__provider__subcmd__help"
                ;;
            vmcryptfs__subcmd__provider,import)
                cmd="vmcryptfs__subcmd__provider__subcmd__import"
                ;;
            vmcryptfs__subcmd__provider,init)
                cmd="vmcryptfs__subcmd__provider__subcmd__init"
                ;;
            vmcryptfs__subcmd__provider,list)
                cmd="vmcryptfs__subcmd__provider__subcmd__list"
                ;;
            vmcryptfs__subcmd__provider,retire)
                cmd="vmcryptfs__subcmd__provider__subcmd__retire"
                ;;
            vmcryptfs__subcmd__provider,rotate)
                cmd="vmcryptfs__subcmd__provider__subcmd__rotate"
                ;;
            vmcryptfs__subcmd__provider,set-default)
                cmd="vmcryptfs__subcmd__provider__subcmd__set__subcmd__default"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,accept)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__accept"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,add-kmip)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__add__subcmd__kmip"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,destroy)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__destroy"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,export)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__export"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,help)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__help"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,import)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__import"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,init)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__init"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,list)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__list"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,retire)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__retire"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,rotate)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__rotate"
                ;;
            vmcryptfs__subcmd__provider__subcmd__help,set-default)
                cmd="vmcryptfs__subcmd__provider__subcmd__help__subcmd__set__subcmd__default"
                ;;
            vmcryptfs__subcmd__vm,accept-rollback)
                cmd="vmcryptfs__subcmd__vm__subcmd__accept__subcmd__rollback"
                ;;
            vmcryptfs__subcmd__vm,convert-format)
                cmd="vmcryptfs__subcmd__vm__subcmd__convert__subcmd__format"
                ;;
            vmcryptfs__subcmd__vm,create)
                cmd="vmcryptfs__subcmd__vm__subcmd__create"
                ;;
            vmcryptfs__subcmd__vm,decrypt-disks)
                cmd="vmcryptfs__subcmd__vm__subcmd__decrypt__subcmd__disks"
                ;;
            vmcryptfs__subcmd__vm,encrypt)
                cmd="vmcryptfs__subcmd__vm__subcmd__encrypt"
                ;;
            vmcryptfs__subcmd__vm,encrypt-disks)
                cmd="vmcryptfs__subcmd__vm__subcmd__encrypt__subcmd__disks"
                ;;
            vmcryptfs__subcmd__vm,help)
                cmd="vmcryptfs__subcmd__vm__subcmd__help"
                ;;
            vmcryptfs__subcmd__vm,rekey)
                cmd="vmcryptfs__subcmd__vm__subcmd__rekey"
                ;;
            vmcryptfs__subcmd__vm,set-disk-pattern)
                cmd="vmcryptfs__subcmd__vm__subcmd__set__subcmd__disk__subcmd__pattern"
                ;;
            vmcryptfs__subcmd__vm,status)
                cmd="vmcryptfs__subcmd__vm__subcmd__status"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,accept-rollback)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__accept__subcmd__rollback"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,convert-format)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__convert__subcmd__format"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,create)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__create"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,decrypt-disks)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__decrypt__subcmd__disks"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,encrypt)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__encrypt"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,encrypt-disks)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__encrypt__subcmd__disks"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,help)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__help"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,rekey)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__rekey"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,set-disk-pattern)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__set__subcmd__disk__subcmd__pattern"
                ;;
            vmcryptfs__subcmd__vm__subcmd__help,status)
                cmd="vmcryptfs__subcmd__vm__subcmd__help__subcmd__status"
                ;;
            *)
                ;;
        esac
    done

    case "${cmd}" in
        vmcryptfs)
            opts="-h -V --keystore --help --version provider vm mount status rekey fsck help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 1 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__fsck)
            opts="-h -V --json --repair --zero-damaged-blocks --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help)
            opts="provider vm mount status rekey fsck help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__fsck)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__mount)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider)
            opts="init add-kmip set-default rotate accept list retire destroy export import"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__accept)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__add__subcmd__kmip)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__destroy)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__export)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__import)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__init)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__list)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__retire)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__rotate)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__provider__subcmd__set__subcmd__default)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__rekey)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__status)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm)
            opts="create encrypt encrypt-disks decrypt-disks set-disk-pattern convert-format status accept-rollback rekey"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm__subcmd__accept__subcmd__rollback)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm__subcmd__convert__subcmd__format)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm__subcmd__create)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm__subcmd__decrypt__subcmd__disks)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm__subcmd__encrypt)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm__subcmd__encrypt__subcmd__disks)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm__subcmd__rekey)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm__subcmd__set__subcmd__disk__subcmd__pattern)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__help__subcmd__vm__subcmd__status)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__mount)
            opts="-o -f -h -V --foreground --log-file --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                -o)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --log-file)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider)
            opts="-h -V --keystore --help --version init add-kmip set-default rotate accept list retire destroy export import help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__accept)
            opts="-h -V --uid --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --uid)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__add__subcmd__kmip)
            opts="-h -V --server --ca --cert --key --default --wrap --key-series --connect-timeout --request-timeout --retries --operation-timeout --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --server)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ca)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cert)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --wrap)
                    COMPREPLY=($(compgen -W "server local" -- "${cur}"))
                    return 0
                    ;;
                --key-series)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --connect-timeout)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --request-timeout)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --retries)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --operation-timeout)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__destroy)
            opts="-h -V --provider --force --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --provider)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__export)
            opts="-h -V --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help)
            opts="init add-kmip set-default rotate accept list retire destroy export import help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__accept)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__add__subcmd__kmip)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__destroy)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__export)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__import)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__init)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__list)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__retire)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__rotate)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__help__subcmd__set__subcmd__default)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__import)
            opts="-h -V --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__init)
            opts="-h -V --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__list)
            opts="-h -V --json --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__retire)
            opts="-h -V --provider --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --provider)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__rotate)
            opts="-h -V --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__provider__subcmd__set__subcmd__default)
            opts="-h -V --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__rekey)
            opts="-h -V --all --deep --provider --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --provider)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__status)
            opts="-h -V --json --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm)
            opts="-h -V --keystore --help --version create encrypt encrypt-disks decrypt-disks set-disk-pattern convert-format status accept-rollback rekey help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__accept__subcmd__rollback)
            opts="-h -V --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__convert__subcmd__format)
            opts="-h -V --content-format --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --content-format)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__create)
            opts="-h -V --encrypt-disks --disk-pattern --content-format --provider --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --disk-pattern)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --content-format)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --provider)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__decrypt__subcmd__disks)
            opts="-h -V --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__encrypt)
            opts="-h -V --encrypt-disks --disk-pattern --content-format --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --disk-pattern)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --content-format)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__encrypt__subcmd__disks)
            opts="-h -V --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help)
            opts="create encrypt encrypt-disks decrypt-disks set-disk-pattern convert-format status accept-rollback rekey help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__accept__subcmd__rollback)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__convert__subcmd__format)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__create)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__decrypt__subcmd__disks)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__encrypt)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__encrypt__subcmd__disks)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__rekey)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__set__subcmd__disk__subcmd__pattern)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__help__subcmd__status)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__rekey)
            opts="-h -V --provider --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --provider)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__set__subcmd__disk__subcmd__pattern)
            opts="-h -V --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        vmcryptfs__subcmd__vm__subcmd__status)
            opts="-h -V --json --keystore --help --version"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --keystore)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
    esac
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _vmcryptfs -o nosort -o bashdefault -o default vmcryptfs
else
    complete -F _vmcryptfs -o bashdefault -o default vmcryptfs
fi
